"""``python -m vitlab.paper [recipes|table2|table5|table6]``: one of the paper's stored tables as markdown."""

from vitlab.paper import main

raise SystemExit(main())
