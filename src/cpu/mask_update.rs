//! Mask update CPU twin (filled by the RigL issue).
