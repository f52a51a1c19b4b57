"""Many fits in one compiled call: batches of responses, simulation, the parametric bootstrap."""
