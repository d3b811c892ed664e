"""Protocol drivers (OPC UA, Modbus TCP): connection, reads, subscriptions and writes to PLCs."""
