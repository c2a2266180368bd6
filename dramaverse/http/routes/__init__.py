"""Routes per resource, each a Quart blueprint."""
