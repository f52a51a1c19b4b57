"""From formula and data to a model: the formula parser, the design, its cross-products."""
