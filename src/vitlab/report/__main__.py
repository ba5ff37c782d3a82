"""``python -m vitlab.report``: see vitlab.report.task."""

from vitlab.report.task import main

if __name__ == "__main__":
    main()
