"""The built-in trainer (a training thread over a DataLoader, with hot restarts), its workloads (the built-in
one, calibrated ones, image folders) and the resumable sampler that keeps the sample order across restarts."""
