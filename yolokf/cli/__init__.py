"""The command line: the Typer commands (`app`), their options (`options`), and everything drawn on a terminal
(`console`). The only package that imports typer and rich."""
