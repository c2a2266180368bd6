"""Long-lived tasks that own state: the catalog keeper now; user sessions and rooms later."""
