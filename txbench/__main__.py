from txbench.cli import main

main()
