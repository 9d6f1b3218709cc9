from pandaflow.cli import main

main()
