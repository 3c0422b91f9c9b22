//! 2-D sample metrics: exact W2, MMD, PMF distance, trajectory straightness and kinetic energy.
