from pandaflow.cli import main

main(["pilot", *__import__("sys").argv[1:]], prog_name="pandaflow pilot")
