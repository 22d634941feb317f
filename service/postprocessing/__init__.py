"""Model outputs → the answer: the map at the upload's size, its defect regions, the verdict, the encoded map."""
