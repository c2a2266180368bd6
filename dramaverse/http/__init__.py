"""HTTP entry points: the Quart-Trio app, its routes, and the security perimeter."""
