from lamini_serve.progress import Progress


def test_plain_progress_lines_show_done_rate_eta_and_failures(capsys):
    with Progress("answering", 20, "answers", enabled=False) as p:
        for i in range(20):
            p.advance(ok=i % 5 != 0)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 10  # one per tenth of the work
    assert lines[-1].startswith("answering: 20/20 (") and "answers/s" in lines[-1] and "4 failed" in lines[-1]
    assert "ETA" in lines[0]
