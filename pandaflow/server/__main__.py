from pandaflow.cli import main

main(["server", *__import__("sys").argv[1:]], prog_name="pandaflow server")
