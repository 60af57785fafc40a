"""Scene data: folders, loaders, augmentation, pose lists, synthetic scenes, dataset setup, view overlap."""
