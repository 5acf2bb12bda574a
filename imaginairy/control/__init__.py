"""ControlNet conditioning: the modes (`modes`), the preprocessors that turn an image into a mode's hint
(`preprocess`), and the ControlNets applied to the UNet over a window of the schedule (`guidance`)."""
