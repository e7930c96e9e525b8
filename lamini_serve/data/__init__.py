"""`lamini data`: seeds -> new instructions -> teacher answers -> a deduplicated dataset."""
