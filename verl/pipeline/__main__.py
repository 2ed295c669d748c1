from verl.pipeline.cli import main
from verl.utils.cli import run_main

run_main(main)
