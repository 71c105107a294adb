"""The forge service: Agent Forge phases run as sagas over the training and model services."""
