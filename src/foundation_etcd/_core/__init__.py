"""Pure code, no I/O: errors, configuration, keys, values, codec, amounts, placement."""
