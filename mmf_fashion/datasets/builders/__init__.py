"""One folder per registered MMF dataset builder: fashiongen, fashioniq,
polyvore_ocir, fashionall. mmf_fashion.plugin imports every module here."""
