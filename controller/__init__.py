"""The on-prem controller service: config, runtime, alarms, actions, sync, local API and CLI."""
