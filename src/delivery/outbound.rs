//! One outbound SMTP attempt through lettre's `AsyncSmtpConnection`.
