"""``python cli.py fit --config configs/quickstart.yaml`` (see README.md)."""
from memel_lightning.cli import main

if __name__ == "__main__":
    main()
