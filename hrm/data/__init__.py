"""City-routing data: the token/vehicle contract, generation, conversion and validation."""
