"""`r1lite cost`: a recipe's time, energy and price before it runs, from the work it computes and a
datasheet or a probe of this machine."""
