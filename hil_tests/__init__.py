"""Hardware-in-the-loop rig: simulated plant and PLCs served over real sockets, fault scenarios."""
