"""The cost meter: what a run computes (FLOPs), on what (the hardware table), for how long, at what
energy and price, and the published reference figures it is compared with."""
