-- Argo CD health of shakeout objects (resource.customizations.health.shakeout.dev_*):
-- ExperimentRun: COMPLETED healthy, FAILED degraded, CANCELED suspended, else progressing.
-- Experiment: the Valid condition; ChaosSwitch: healthy, suspended while Stop All.
local hs = {status = "Progressing", message = "waiting for the shakeout operator"}
if obj.kind == "ChaosSwitch" then
  if obj.spec ~= nil and obj.spec.enabled then
    hs.status = "Healthy"
    hs.message = "experimenting enabled"
  else
    hs.status = "Suspended"
    hs.message = "experimenting disabled (Stop All)"
  end
  return hs
end
if obj.status == nil then
  return hs
end
if obj.metadata ~= nil and obj.status.observedGeneration ~= nil
    and obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "the operator has not seen the latest change yet"
  return hs
end
if obj.kind == "ExperimentRun" then
  local phase = obj.status.phase
  local why = obj.status.message or ""
  if phase == "COMPLETED" then
    hs.status = "Healthy"
  elseif phase == "FAILED" then
    hs.status = "Degraded"
  elseif phase == "CANCELED" then
    hs.status = "Suspended"
  end
  if phase ~= nil then
    hs.message = phase .. ": " .. why
  end
  return hs
end
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Valid" then
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.status == "False" then
        hs.status = "Degraded"
      end
      hs.message = condition.message or ""
    end
  end
end
return hs
