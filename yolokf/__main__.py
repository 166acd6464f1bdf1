from yolokf.cli.app import main

main()
