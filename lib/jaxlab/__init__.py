"""jaxlab: one config-driven training loop for Flax models on any number of devices."""
