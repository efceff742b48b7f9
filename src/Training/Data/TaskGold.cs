namespace Rlhf.Training.Data;

/// <summary>
/// A task's own score of one response, independent of the reward model: what held-out evaluation, best-of-N and the
/// reports call gold. The default task has one (<see cref="DefaultTask.GoldScorer.TaskGoldFor"/>); a user's prompts have none,
/// and the stages then compare by RM score, KL and length only.
/// </summary>
public delegate double TaskGold(string prompt, string response, bool endedWithEos);
