from yolokf.cli import main

main()
