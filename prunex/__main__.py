"""`python -m prunex ...`, and so `torchrun --nproc_per_node N -m prunex train dcp ...`: the CLI."""

from prunex.cli.main import main

if __name__ == "__main__":
    main()
