//! fhirlake.
