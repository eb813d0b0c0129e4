"""Where usage comes from: the synthetic generator, the Azure Functions trace, event logs."""
