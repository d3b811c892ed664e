"""The hardware-in-the-loop rig: the simulated plant and its PLCs over real sockets, fault injection,
scenarios and the demo line. It sits on top of the controller (it may import it; nothing in the product
imports the rig) and ships in the wheel, without the test files of ``hil_tests/``."""
