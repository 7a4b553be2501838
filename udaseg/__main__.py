from udaseg.cli import app

app(prog_name="udaseg")
