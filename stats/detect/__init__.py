"""The companion detectors (nearest neighbours, MiFID, C_T, birthday; companions.REGISTRY), extraction by
generation, the discriminator check, and the nearest-neighbour merging they share."""
