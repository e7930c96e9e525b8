from lamini_serve.cli import main

main()
