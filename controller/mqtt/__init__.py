"""The MQTT connection the MQTT features share (`session.MqttLink`); imported only with [mqtt]."""
