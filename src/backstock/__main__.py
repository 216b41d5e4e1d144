from backstock.cli import main

main()
