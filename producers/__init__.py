"""Everything that emits touchpoints onto the input topic."""
