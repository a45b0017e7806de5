from sessionflow.cli.app import main

main()
