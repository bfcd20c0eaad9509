"""The paper's studies as programs: the codebook-size study and its report, and `fsq bench`."""
