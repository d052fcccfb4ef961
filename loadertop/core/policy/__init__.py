"""What the measurements mean: the model of samples/s per worker count, the noise, the advice and its report
tables, and the autotuner's decisions (pure logic, fed readings). No torch."""
