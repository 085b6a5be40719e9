"""`python -m vlforget ...` (also what `accelerate launch -m vlforget ...` runs)."""

from vlforget.cli import main

main()
