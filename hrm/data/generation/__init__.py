"""hrm.data.generation: making the data: the city and the generator (base scenarios x vehicles -> 18 files)."""
