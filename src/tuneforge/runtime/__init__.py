"""What every stage runs on: the device and precision, packed attention, half-precision frozen weights, processes."""
