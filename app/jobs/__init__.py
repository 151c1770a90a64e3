"""Jobs: any operation request run in the background (`Prefer: respond-async`), by id."""
