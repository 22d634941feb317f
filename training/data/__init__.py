"""Input data: the MVTec 3D-AD layout and its readers (`layout`), data checks (`check`), converters
(`eyecandies`, `convert_eyecandies`, `import_reviews`), the training dataset (`dataset`), epoch sampling and
preprocessed splits (`prepared`)."""
