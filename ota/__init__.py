"""Model store, update state machine, watchers, MQTT link, signing, download, fleet commands."""
